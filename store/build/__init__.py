"""`strata build`: Dockerfiles parsed (`dockerfile`), their words expanded (`words`)."""
