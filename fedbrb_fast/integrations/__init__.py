"""Adapters that plug fedbrb_fast's plans, local training and fast aggregation into FL frameworks."""
