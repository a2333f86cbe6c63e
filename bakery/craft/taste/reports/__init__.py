"""Reports: the evaluation's HTML report and its judge sections."""
