"""Decoding: the loop, and its three axes (policies, caches, schedules)."""
