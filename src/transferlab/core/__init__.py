"""Foundation: errors, the table of options and defaults, atomic files, progress bars, the device.

Imports nothing else of transferlab; every other subpackage may import it."""
