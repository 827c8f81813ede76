from orchestrator.front import main

main()
