"""`medsql demo`: a local web page comparing the baseline's and the champion's SQL for a question."""
