"""Test doubles: local stand-ins for services the library talks to."""
