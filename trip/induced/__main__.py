from trip.induced.cli import main

main()
