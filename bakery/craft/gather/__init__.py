"""Gather: pictures in (booru scrape, the user's folders), decoded, converted to PNG, named (rules.md §1-§3)."""
