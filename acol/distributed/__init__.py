"""Ray Train training loop and Ray Data extraction, thin layers over the rest of the library."""
