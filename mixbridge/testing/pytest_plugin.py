"""pytest plugin (entry point `pytest11`): fixtures `r_session`, `assert_matches_r`; `--require-r`."""
