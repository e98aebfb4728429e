

def test_the_held_moment_is_read_from_the_kernels_struct_page():
    from orchestrator.inject.races.highorder import free_buddy, not_tail_of, struct_page_state

    def page(compound_head=0, page_type=0xffffffff, refcount=0) -> bytes:
        raw = bytearray(64)
        raw[8:16] = compound_head.to_bytes(8, "little")
        raw[48:52] = page_type.to_bytes(4, "little")
        raw[52:56] = refcount.to_bytes(4, "little")
        return bytes(raw)

    head = 0xffffea0000a00000
    assert not_tail_of(struct_page_state(page(compound_head=head | 1)), head) is None
    assert "not the block's head" in not_tail_of(struct_page_state(page()), head)
    # is_free_buddy_page(): PFN 0x1003 inside a free order-2 block at 0x1000, or on no free list.
    def pages(buddy_at: int | None, order: int = 0):
        def read(pfn: int) -> bytes:
            if pfn != buddy_at:
                return page()
            raw = bytearray(page(page_type=0xf0000000))
            raw[40:48] = order.to_bytes(8, "little")
            return bytes(raw)
        return read
    assert free_buddy(0x1003, pages(0x1000, 2)) == "it is in a free buddy block of order 2 at PFN 0x1000"
    assert free_buddy(0x1003, pages(0x1000, 1)) is None  # that block does not reach it
    assert free_buddy(0x1003, pages(None)) is None        # taken, or on a per-CPU list
