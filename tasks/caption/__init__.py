"""Caption tasks: autotag, prune."""
