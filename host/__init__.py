"""The host driver: register map, weight packing, task switching, board and simulation backends."""
