"""Backends leaneye_compress adds to leaneye through entry points (group `leaneye.backends`), and what they run on the device."""
