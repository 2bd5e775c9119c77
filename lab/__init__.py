"""lab: the from-scratch code behind the book *LLM Kernels*.

One module per idea; chapters import from here so that every number in the book
comes from code that a test can reach.
"""

__version__ = "0.1.0"
