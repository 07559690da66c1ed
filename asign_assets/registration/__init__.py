"""Registration of serial sections into one common frame, from their tissue masks.

Modules: :mod:`.params` (knobs and per-section result), :mod:`.search` (the
SimpleITK multi-start search, ``register_stack``), :mod:`.transforms` (points
between frames), :mod:`.transform_io` (``.tfm`` files), :mod:`.masks` (mask
images, warping, Dice) and :mod:`.overlay` (the PNG, no SimpleITK).

Conventions
-----------
* Every section's physical frame is its own full-resolution image in microns:
  ``x_um = x_px * pixel_size_um`` (x = column, y = row). A mask at thumbnail
  scale with ``s`` um per mask pixel has its pixel ``j`` centred at ``(j + 0.5) * s``
  (the sub-micron offset of full-res pixel centres is ignored).
* The common frame IS the reference section's own frame, so the reference gets
  the identity.
* ``SectionRegistration.transform`` maps common-frame um -> the section's own um
  (SimpleITK's fixed -> moving convention, what ``sitk.Resample`` needs to warp the
  section onto the reference). ``to_common_frame`` applies its inverse to points.
"""
