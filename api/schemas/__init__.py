"""Request and response bodies, separate from the tables. Inputs forbid unknown fields."""
