"""asign: serial H&E sections + one or more measured ST sections -> imputed 3D expression volume."""

__version__ = "0.1.0"
