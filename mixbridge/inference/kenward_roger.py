"""Kenward–Roger (pbkrtest): see general_builder / scalar_builder (in progress)."""
