"""The registry's trust side: what it signs, with which keys, and how those keys are rotated.

`signing` makes signed root, release and assignment documents; `rotation` replaces the release
key or the root keys all or nothing; `key_files` reads and writes the private keys on disk.
"""
