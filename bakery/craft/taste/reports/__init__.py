"""Reports: the evaluation's HTML report, its judge sections, and the HTML pieces both are made of."""
