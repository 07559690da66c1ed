"""Job functions for tests/runtime/test_process_jobs.py, imported by the job processes."""


def upper(payload: bytes) -> bytes:
    return payload.upper()


def fail(payload: bytes) -> bytes:
    raise ValueError(f"bad payload {payload.decode()}")
