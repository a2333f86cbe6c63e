"""Caption: the WD14 tagger, tag cleanup, triggers and pruning, the training set, repeats, tag statistics (rules.md §8-§10)."""
