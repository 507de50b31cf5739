"""`make bench`: figures as ratios against a floor measured in the same run (see __main__)."""
