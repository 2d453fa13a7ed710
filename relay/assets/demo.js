// The demo client (being written).
