"""The use cases, one module each, none importing another: ``build`` (plan, build), ``offline``
(compile, training sets, query), ``materialize`` (the only online writer), ``online`` (the
FeatureReader). ``context`` holds the configuration and the lazily opened resources they share."""
