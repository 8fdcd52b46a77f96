"""The seed's walkthrough, reproduced and corrected."""
