"""Bibliography labels as the text cites: "Panigrahi et al., 2023", not [1]–[14].

A pybtex label style registered for sphinxcontrib-bibtex (``bibtex_default_style:
authoryear`` in ``_config.yml``); entries keep the plain style's layout, with their DOI,
URL and arXiv id as links.
"""
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            last = [" ".join(p.last_names) for p in entry.persons.get("author", [])] or [entry.key]
            names = last[0] if len(last) == 1 else f"{last[0]} and {last[1]}" if len(last) == 2 else f"{last[0]} et al."
            yield f"{names.replace('{', '').replace('}', '')}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(PlainStyle):
    default_label_style = "authoryear"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
