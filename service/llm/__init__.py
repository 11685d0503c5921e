"""Model backends behind one interface: stream text for a prompt."""
