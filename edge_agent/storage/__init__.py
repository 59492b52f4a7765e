"""What the agent keeps on disk: its state (`state`), the model store with its partial
downloads (`store`), writes the disk refused, retried until they land (`writes`), and the lock
that keeps one agent per state directory (`lock`)."""
