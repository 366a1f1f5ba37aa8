"""umig: move a running Linux process into an image stream and back out."""

__version__ = "0.1.0"
