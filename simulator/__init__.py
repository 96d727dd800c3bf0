"""Simulated worlds of users, items and feedback, with ground truth."""
