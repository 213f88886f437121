"""Serial meter drivers: DL/T 645-2007/1997, CJ/T 188-2004 and declarative vendor framed
protocols on RS-485 lines (local serial ports or transparent TCP serial servers)."""
