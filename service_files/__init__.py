"""The unit, plist and settings templates, shipped in the wheel as `agent.service_files`.

A regular package (not a namespace) so that an editable install finds it too; the templates
are read with importlib.resources by `agent.service.templates`.
"""
