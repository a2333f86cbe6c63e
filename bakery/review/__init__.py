"""The review studio (`bakery review RECIPE`): see the dataset as it will be trained, and correct it."""

from bakery.review.app import create_app

__all__ = ["create_app"]
