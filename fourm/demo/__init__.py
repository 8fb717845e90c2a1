"""The demo: an app on top of the library, like the CLI. :mod:`~fourm.demo.stages` runs the whole flow on the
built-in scenes (`fourm demo`), :mod:`~fourm.demo.showcase` draws its pictures and :mod:`~fourm.demo.report`
gathers them into one page; :mod:`~fourm.demo.serve` answers a person's requests on a trained run and
:mod:`~fourm.demo.page` puts them in a browser (`fourm serve`)."""
