"""Where outputs live: the storage root with atomic writes and remote roots (``store``), the one
table of what each asset writes (``layout``), content digests of raw inputs (``input_digest``)
and what training and evaluation load from a sample's outputs (``stack_inputs``).
"""
