"""The local AWS stack: moto with its adaptations, local Lambda, the front and its faults."""
