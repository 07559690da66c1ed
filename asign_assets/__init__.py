"""asign: serial H&E sections + one measured ST section -> imputed 3D expression volume."""

__version__ = "0.1.0"
