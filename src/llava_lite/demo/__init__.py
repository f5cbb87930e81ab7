"""The one-command demo: world → offline teacher → tiny pretrained parts → stage 1 → stage 2 → eval."""
