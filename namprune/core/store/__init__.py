"""Storage: checkpoints, atomic files, the records written beside them, local weights files, and the checks of paths a user gives."""
