from .cli import main
from .process_group import end_process

if __name__ == "__main__":
    main()
    # While every object is alive, not at interpreter shutdown (see process_group): a Gloo group left
    # to finalisation can abort a finished DDP process.
    end_process()
