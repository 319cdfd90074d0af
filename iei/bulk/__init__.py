"""`iei embed`: embed a whole folder or list of images offline, in-process or on Ray Data."""
