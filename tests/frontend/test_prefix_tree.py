from rollserve.frontend.prefix_tree import PrefixTree


def test_match_is_the_longest_stored_prefix():
    tree = PrefixTree()
    tree.insert("system: be brief\nuser: hello")
    tree.insert("system: be brief\nuser: goodbye")
    assert tree.match("system: be brief\nuser: hello there") == len("system: be brief\nuser: hello")
    assert tree.match("system: be brief\nuser: good") == len("system: be brief\nuser: good")
    assert tree.match("system: be verbose") == len("system: be ")
    assert tree.match("other") == 0
    assert tree.size == len("system: be brief\nuser: hello") + len("goodbye")


def test_size_is_capped_by_dropping_the_least_recently_used_leaves():
    tree = PrefixTree(max_chars=32)
    tree.insert("a" * 10 + "first")
    tree.insert("b" * 10 + "second")
    tree.match("a" * 10 + "first")  # used again: "b..." is the older one
    tree.insert("c" * 10 + "third")
    assert tree.size <= 32
    assert tree.match("a" * 10 + "first") == 15
    assert tree.match("b" * 10 + "second") == 0
