"""The local stack behind `tuneforge up|down|status`: the object store and the four services."""
