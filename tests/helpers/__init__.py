"""Helpers the tests share: real servers, the app, readers, feeds, console sessions."""
