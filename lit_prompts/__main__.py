from .cli import main
from .process_group import destroy_process_group_if_any

if __name__ == "__main__":
    main()
    # While every object is alive, not at interpreter shutdown (see process_group): a Gloo group left
    # to finalisation can abort a finished DDP process.
    destroy_process_group_if_any()
