"""Stages 03 and 04: metrics (`metrics`), figures (`plots`), the model card
(`model_card`) and the comparison of runs (`compare`)."""
