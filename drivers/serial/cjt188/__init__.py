"""CJ/T 188-2004 water, heat and gas meter protocol."""
