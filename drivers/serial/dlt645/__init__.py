"""DL/T 645-2007 (and -1997) electricity meter protocol."""
