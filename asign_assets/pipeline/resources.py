"""The resources every asset and check uses: where assets live and which device computes."""

from __future__ import annotations

import dagster as dg

from asign_assets.runtime.home import default_home
from asign_assets.storage.store import Storage


class StorageResource(dg.ConfigurableResource):
    """Where assets live: a local folder or an fsspec URL. Empty means $ASIGN_HOME or ~/.asign."""

    root: str = ""

    def get(self) -> Storage:
        return Storage(self.root or default_home())


class DeviceResource(dg.ConfigurableResource):
    """The only place a compute device is chosen: ``auto``, ``cpu`` or ``cuda[:N]``."""

    device: str = "auto"

    def torch_device(self):
        from asign_assets.runtime.device import resolve_device

        return resolve_device(self.device)


def sample_io(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, storage: StorageResource) -> tuple[Storage, str]:
    """(storage, sample id) of the running asset or check."""
    return storage.get(), context.partition_key
