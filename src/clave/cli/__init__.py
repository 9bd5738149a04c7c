"""The `clave` command: the only code that prints to the terminal and exits."""
