"""Figures. Optional to import: matplotlib is loaded inside each plotting function.

Every function takes ``ax=None`` (or ``fig=None``) so it can draw into a notebook's
axes, and returns the matplotlib figure it drew on.
"""
