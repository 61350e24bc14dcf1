"""Thin routes: dependencies in, one service call, return."""
